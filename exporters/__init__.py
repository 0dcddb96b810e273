"""Export side of vlmedge (needs the 'export' extra): sources -> ONNX/OpenVINO/TensorRT -> parity -> artifact."""
