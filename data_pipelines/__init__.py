"""Data pipelines for molmo-jax training (issue 4).

Modules, one job each:

  pixmo       readers of the eight PixMo datasets (local hub parquet files) -> formatter example dicts
  pixmo_checks  the row checks of those readers: what is dropped, and under which reason
  hub         a PixMo hub copy as a whole: `check-data` (usable / dropped per dataset), `download`
  academic    the academic datasets of the stage-2 mixture: tfds builders (ArrayRecord) + their sources
  synthetic   PixMo-lite: an offline, seeded generator of the same datasets (clocks, shapes, charts), its
              held-out sets and the object masks of its scenes (for the pointing eval)
  user_data   the user JSONL format of fine-tuning: reader, validator, URL images
  mixtures    grain pipelines: stage-1 captioning and the stage-2 mixture -> fixed-shape numpy batches
  packing     sequence packing of several examples into one batch row
  random_batches  deterministic random token batches (data.kind "synthetic")
  factory     make_data(cfg): the batches of a training config's data section, for every kind
  vocab       a small BPE trained on PixMo-lite text (the tiny models' tokenizer)
  download    the PixMo image downloader (concurrent, resumable, hash-checked)

Every dataset here is a `pixmo.Source`: `len(source)` examples, `source.get(index, rng)` -> an example
dict in the input format of `molmo_jax.formatting.Formatter` (image, style, question/answer, points,
message_list, ...), the same contract as the official `olmo.data.dataset.Dataset`.
"""
