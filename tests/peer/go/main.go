// bus-go-peer: the Go peer of the workspace tests. It restates the Go SDK's envelope rules
// (envelope.go) and speaks Kafka through sarama 1.22 (kafka.go), so the tests can check the
// Rust bus against what a Go service on the SDK does.
//
// Subcommands (each prints JSON on stdout; errors go to stderr with a non-zero exit):
//
//	cases      the case table: one JSON line per envelope or aggregate-id case (verdict.go)
//	decode     one hex-encoded record value per stdin line -> one envelope verdict per line
//	produce    publish envelopes as the SDK does (sarama's hash partitioner, X-* headers)
//	consume    read a topic from the start and validate every envelope
//	group      a sarama consumer-group member logging what it is assigned and handles
//	version    the Go and sarama versions
//
// Built by `cargo xtask test` (a Go module: sarama v1.46.0 from the Go module proxy, pinned by go.sum).
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: bus-go-peer cases|decode|produce|consume|group|version [flags]")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "cases":
		printCases()
	case "decode":
		decodeLines()
	case "produce":
		produce(args)
	case "consume":
		consume(args)
	case "group":
		group(args)
	case "version":
		emit(map[string]string{"go": runtime.Version(), "sarama": saramaVersion, "json": jsonLibrary})
	default:
		fail("unknown subcommand " + os.Args[1])
	}
}

// emit prints v as one JSON line on stdout.
func emit(v interface{}) {
	line, err := json.Marshal(v)
	if err != nil {
		fail("cannot encode output: " + err.Error())
	}
	os.Stdout.Write(append(line, '\n'))
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "bus-go-peer:", message)
	os.Exit(2)
}

func printCases() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	write := func(v interface{}) {
		line, err := json.Marshal(v)
		if err != nil {
			fail("cannot encode a verdict: " + err.Error())
		}
		out.Write(append(line, '\n'))
	}
	for _, c := range envelopeCases() {
		write(judgeEnvelope(c.name, []byte(c.input)))
	}
	for _, c := range aggregateCases() {
		write(judgeAggregate(c.name, c.value, c.headers, c.key))
	}
}

// decodeLines judges each stdin line's hex bytes as an envelope; the verdict's name is the
// line number.
func decodeLines() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 0, 1<<20), 64<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	n := 0
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		value, err := hex.DecodeString(line)
		if err != nil {
			fail(fmt.Sprintf("line %d is not hex: %v", n+1, err))
		}
		verdict, err := json.Marshal(judgeEnvelope(fmt.Sprint(n), value))
		if err != nil {
			fail("cannot encode a verdict: " + err.Error())
		}
		out.Write(append(verdict, '\n'))
		n++
	}
	if err := in.Err(); err != nil {
		fail("cannot read stdin: " + err.Error())
	}
}
