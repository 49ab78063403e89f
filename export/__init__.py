"""Graph descriptors, ONNX export and TensorRT builds (arrives with the export issue)."""
