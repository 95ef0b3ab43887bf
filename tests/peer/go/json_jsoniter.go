//go:build jsoniter

// json-iterator's ConfigCompatibleWithStandardLibrary, which later versions of the Go SDK
// decode and encode envelopes with (its RawMessage type included). Not what the tests run:
// built by hand (`-tags jsoniter`, Debian's golang-github-json-iterator-go-dev) to list where it
// disagrees with encoding/json (docs/MIGRATING_FROM_GO.md).

package main

import jsoniter "github.com/json-iterator/go"

type rawMessage = jsoniter.RawMessage

const jsonLibrary = "json-iterator ConfigCompatibleWithStandardLibrary"

var compatible = jsoniter.ConfigCompatibleWithStandardLibrary

func unmarshal(data []byte, v interface{}) error { return compatible.Unmarshal(data, v) }

func marshal(v interface{}) ([]byte, error) { return compatible.Marshal(v) }
