"""The VAE model kinds, their registry, and running a model over many images."""
