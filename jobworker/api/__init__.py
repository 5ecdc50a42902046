"""Generated gRPC/protobuf code for jobworker.v1 (make proto). Never edit by hand."""
