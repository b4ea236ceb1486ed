"""Metrics over experiment results: reference-based and diversity image metrics, and text-image alignment scored
by local models, computed by a resumable pass and summarised per axis value.

Sits above the results store (experiments/store) and may import it and the layers below; it never imports the
text encoder or the experiment planner: what a pass needs of an experiment is read from the stored plan.
"""
