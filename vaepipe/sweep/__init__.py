"""The beta-sweep and sweep-table stages: recipe 002's study, its frames and its table."""
