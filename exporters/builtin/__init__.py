"""Built-in models: small models of real Hugging Face classes, trained by this project
on data it generates itself, shipped as safetensors beside the scripts that trained them."""
