"""Generated from proto/etcd (etcd v3.4.23) by `make proto`: never edit by hand."""
