"""Training recipes: `get_config(arg) -> ConfigDict` for each stage of the Molmo recipe.

  common     what every recipe shares: the optimizer and checkpoint sections, the stage formatting and seeds
  stage1     dense captioning (official `train_captioner.py`); tiny, released or PixMo-lite ("lite")
  stage2     the multitask mixture (official `train_multitask_model.py`), from a stage-1 checkpoint
  lite       PixMo-lite: the tiny model and the values the stage recipes take for arg "lite[-long|-smoke]"
  finetune   fine-tuning a checkpoint on user data (full or LoRA)

A launcher takes a recipe file and its arg (`--config molmo_jax/recipes/stage1.py:tiny`); the data
pipeline (`data_pipelines.factory.make_data`) uses the config's data section and model formatting as given.
"""
