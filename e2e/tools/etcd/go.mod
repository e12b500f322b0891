// Wrapper module: go.etcd.io/etcd/server/v3 cannot be 'go install'ed because its
// go.mod replaces the sibling etcd modules with local paths. Requiring it from here
// uses the published versions of those modules instead.
module fiberstack.io/e2e/tools/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.6.16
