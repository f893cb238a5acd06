package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"

	"github.com/gpulet/gpulet/internal/inventory"
	"github.com/gpulet/gpulet/internal/nvml"
)

// outputFlag is -o: table, json or yaml.
type outputFlag struct{ format string }

func (f *outputFlag) String() string { return f.format }

func (f *outputFlag) Set(s string) error {
	switch s {
	case "table", "json", "yaml":
		f.format = s
		return nil
	}
	return fmt.Errorf("want table, json or yaml, got %q", s)
}

type inventoryArgs struct {
	nvml   nvmlFlag
	output outputFlag
}

func inventoryFlags(out io.Writer) (*flag.FlagSet, *inventoryArgs) {
	a := &inventoryArgs{output: outputFlag{format: "table"}}
	fs := newFlagSet("inventory", "Prints the GPUs, MIG devices and NVLink peers this node has.", out)
	fs.Var(&a.nvml, "nvml", "where NVML comes from: real, mock:<machine> (dgx-a100, dgx-h100, dgx-h200, dgx-b200) or mock:<state file>")
	fs.Var(&a.output, "o", "output format: table, json or yaml")
	return fs, a
}

func inventoryCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, a := inventoryFlags(stderr)
	if err := parseFlags(fs, args, osLookupEnv); err != nil {
		return err
	}
	backend, err := nvml.Open(ctx, nvml.BackendOptions{Spec: a.nvml.spec})
	if err != nil {
		return err
	}
	defer func() { _ = backend.Close() }()
	inv, err := inventory.Discover(backend.Adapter)
	if inv == nil {
		return err
	}
	if err != nil {
		fmt.Fprintf(stderr, "gpulet: warning: %v\n", err)
	}
	switch a.output.format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(inv)
	case "yaml":
		b, err := yaml.Marshal(inv)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}
	return printTable(stdout, inv)
}

// printTable prints one line per GPU, and per MIG device under its GPU.
func printTable(w io.Writer, inv *inventory.Inventory) error {
	fmt.Fprintf(w, "Driver %s, CUDA %s, %d GPUs\n\n", inv.System.DriverVersion, inv.System.CUDADriverVersion, len(inv.GPUs))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tUUID\tPRODUCT\tMEMORY\tMIG\tNVLINK PEERS")
	for _, g := range inv.GPUs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", g.Index, g.UUID, g.Device.Name, gib(g.MemoryBytes), migMode(g), nvlinkPeers(inv, g))
		for _, m := range g.MigDevices {
			fmt.Fprintf(tw, "  %d/%d\t%s\t%s\t%s\t%s\t\n", m.GIID, m.CIID, m.UUID, "MIG "+m.Profile, gib(m.MemoryBytes), fmt.Sprintf("slices %d-%d", m.Placement.Start, m.Placement.Start+m.Placement.Size-1))
		}
	}
	return tw.Flush()
}

func gib(b uint64) string { return fmt.Sprintf("%.0f GiB", float64(b)/(1<<30)) }

func migMode(g inventory.GPU) string {
	switch {
	case g.MIG == nil:
		return "n/a"
	case g.MIG.Enabled:
		return "enabled"
	}
	return "disabled"
}

// nvlinkPeers lists the indexes of the GPUs this one reaches over NVLink,
// with the link count: "1(18) 2(18)".
func nvlinkPeers(inv *inventory.Inventory, g inventory.GPU) string {
	var peers []string
	for _, l := range g.Links {
		if l.NVLinks == 0 {
			continue
		}
		if p, ok := inv.GPU(l.PeerUUID); ok {
			peers = append(peers, fmt.Sprintf("%d(%d)", p.Index, l.NVLinks))
		}
	}
	if len(peers) == 0 {
		return "-"
	}
	return strings.Join(peers, " ")
}
