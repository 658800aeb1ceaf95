"""Params overrides that shrink every stage of the pipeline to seconds on tiny generated data."""

TINY_PIPELINE = {
    "mlp": {"epochs": 2, "hidden": [32], "latent_dim": 4, "warmup_epochs": 2, "batch_size": 64},
    "conv": {"epochs": 1, "channels": [4, 8], "latent_dim": 4, "batch_size": 64},
    "sweep": {"betas": [0.1, 1.0], "epochs": 1, "channels": [4, 8], "batch_size": 32,
              "gif_frames": 3},
    "classifier": {"channels": [4], "features": 8, "epochs": 1, "batch_size": 64},
    "evaluate": {"samples": 100, "iwae_samples": 4, "iwae_images": 20, "iwae_batch": 10,
                 "probe_images": 100, "silhouette_images": 40, "diversity_images": 20,
                 "batch_size": 64},
    "visualize": {"scatter_points": 50, "tsne_iterations": 250},
}

ALL_STAGES = {"download", "split", "train-mlp", "train-conv", "beta-sweep@0.1",
              "beta-sweep@1.0", "sweep-table", "train-classifier", "evaluate", "visualize"}
