"""Dataset, model and stage configs (YAML), installed as sssc.configs."""
