module github.com/containerd/log

go 1.25.0
