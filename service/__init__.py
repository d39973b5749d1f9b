"""dlr-reconciler: SMS delivery reports, pushed and pulled, merged into one exact state."""
