"""Networks only (nn.Modules); training objectives live in genforge.methods."""
