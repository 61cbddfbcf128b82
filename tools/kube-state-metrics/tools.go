//go:build tools

// Package tools records the commands this module builds.
package tools

import _ "k8s.io/kube-state-metrics/v2"
