"""I-Scene trainer: reads only shards and checkpoints (never imports datagen)."""
