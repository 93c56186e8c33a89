"""The collector's commands: the CLI, add-agent, export, the demo."""
