"""What the stages read, loaded and checked: the prepared dataset and the pool (`data`), the generator, the mixing
layers and the W+ codes (`gan`), the attribute probe (`probe`). Each raises a StageError that names the file and
what to do, so that every stage refuses a missing or stale input with the same line."""
