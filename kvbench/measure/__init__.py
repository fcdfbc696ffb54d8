"""One cell measured: its spec, phases, timing, memory, energy, the token check and price, the roofline."""
