// Command cvpn is the cvpn endpoint: a VPN server that stock OpenVPN clients connect to.
// It is the only composition root: it reads flags and the endpoint file and wires the packages.
//
//	cvpn serve --config endpoint.yaml     run the endpoint in the foreground
//	cvpn validate --config endpoint.yaml  check an endpoint file and print a summary
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// exitInvalid is the exit status for an invalid endpoint file.
const exitInvalid = 2

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitInvalid
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "cvpn: unknown command %q\n", args[0])
		usage(stderr)
		return exitInvalid
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: cvpn <command> [flags]

commands:
  serve     --config FILE   run the endpoint in the foreground (SIGTERM/SIGINT stop, SIGHUP reloads)
  validate  --config FILE   check an endpoint file; exit status 2 if it is invalid
`)
}

// configFlag parses the flags shared by the commands that read an endpoint file.
func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "endpoint.yaml", "endpoint file")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", errors.New("unexpected arguments: " + fmt.Sprint(fs.Args()))
	}
	return *path, nil
}
