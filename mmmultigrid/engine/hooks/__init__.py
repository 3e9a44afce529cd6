"""mmengine hooks of mmmultigrid."""
