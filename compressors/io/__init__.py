"""Reading models users hand us and writing checkpoints in the formats the methods declare."""
