"""vaepipe: the library behind the DVC stages (data, models, objective, training, params)."""
