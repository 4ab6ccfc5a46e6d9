// Module images holds the programs baked into the local cluster's container
// images (e2e/images); today only the pod sandbox's pause process.
module github.com/stickynet/stickynet/hack/images

go 1.26.0
