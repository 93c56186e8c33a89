"""The contract both programs speak: wire messages, limits, readings, sessions; standard library only."""
