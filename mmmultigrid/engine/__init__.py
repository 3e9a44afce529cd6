"""Engine: the hook that runs the plan in mmengine's Runner, the preflight checks at start-up and the
step time per grid shape."""
