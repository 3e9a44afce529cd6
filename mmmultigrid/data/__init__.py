"""Data: the batch sampler, the shape-varying pipeline, rawframes with smaller copies, the collate
function, the loader check and the synthetic dataset."""
