"""The evaluate and train-classifier stages: measures, the evaluation, the feature classifier."""
