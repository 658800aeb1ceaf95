"""The visualize stage: figures, the drawing plan, GIFs, latent projections and the report."""
