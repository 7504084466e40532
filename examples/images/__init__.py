"""Image classification end to end: a synthetic JPEG data set in Parquet (`make_data`),
ResNet-18 written with torch.nn and its seeded weights (`resnet`), and the pipeline's stages
(`stages`: decode → Classifier → top5). Nothing is imported here: torch and Pillow load only
when a module that needs them is imported."""
