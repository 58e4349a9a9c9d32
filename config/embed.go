// Package config holds kawase's deployment manifests: plain Kubernetes and Knative YAML, applied to a
// cluster with `ko apply -f config/` and read by the manifest tests and the local dispatcher through
// FS. This file is the only Go code here; everything else in the directory is data.
package config

import "embed"

// FS holds every manifest of this directory, and the Secret templates in secrets/.
//
//go:embed *.yaml secrets/*.yaml
var FS embed.FS
