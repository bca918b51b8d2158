"""surgecast wiring: sources, stage functions, CLI and reports over the pure stage packages."""
