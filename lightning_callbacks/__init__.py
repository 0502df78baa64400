"""Lightning callbacks that turn the best checkpoint into deployable, verified artifacts."""
