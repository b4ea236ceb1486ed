"""Experiments: studies as data (TOML), planned into runs with deterministic ids, run resumably in batches, and
kept in the results store. Also the prompt library and the preset sweeps.

May import generation/ and the layers below. This ``__init__`` stays empty of imports: planning and listing must
not pay for torch, which the runner imports.
"""
