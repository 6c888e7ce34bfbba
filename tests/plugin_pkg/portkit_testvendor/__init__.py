from portkit.backends.cpu import CPUBackend
