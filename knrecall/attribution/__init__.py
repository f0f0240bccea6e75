"""Knowledge-neuron attribution: integrated gradients per layer (engine and naive reference) and KN selection."""
