"""TensorRT engines of the served graphs: building plans into a model repository and checking them against ONNX."""
