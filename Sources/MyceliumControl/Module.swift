// The control plane module (pure).
