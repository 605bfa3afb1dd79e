"""The autoscaler: decides replica counts and drives a GPU backend."""
