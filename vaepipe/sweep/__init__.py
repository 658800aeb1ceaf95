"""The beta-sweep and sweep-table stages: seed 002's study, its frames and its table."""
