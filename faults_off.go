//go:build !faults

package main

import "github.com/spf13/pflag"

// addFaultFlags adds nothing: fault points exist only in test builds (tag faults).
func addFaultFlags(*pflag.FlagSet, *Config) {}
