"""The scheduler service: owns jobs, plans rounds and assigns tasks to nodes."""
