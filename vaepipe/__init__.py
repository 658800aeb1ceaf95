"""vaepipe: the library behind the DVC stages, one package per stage (see the README)."""
