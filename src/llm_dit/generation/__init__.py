"""Generation: caption features -> latents -> images. Sigma schedules, the one denoising loop, the pipeline that
ties encoder, DiT and VAE together, batching of requests, decoding, the PNG record and profiling.

May import conditioning/, models/ and the shared leaves; never experiments/ or anything above it.
"""
