package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/cvpn/cvpn/auth/mfa"
	"github.com/cvpn/cvpn/config"
	"github.com/cvpn/cvpn/endpoint"
	"github.com/cvpn/cvpn/endpoint/admin"
	"github.com/cvpn/cvpn/state"
)

const userUsage = `usage: cvpn user mfa enroll NAME [--config FILE] [--force]
       cvpn user mfa reset NAME [--config FILE]

enroll gives a directory user a new TOTP secret and prints it as an otpauth URI and a QR code
to scan with an authenticator app; reset removes it (the user cannot log in until enrolled
again). Both work on the endpoint's state store (state_dir), through the running endpoint's
admin API when it runs.`

// cmdUser runs `cvpn user mfa enroll|reset NAME`.
func cmdUser(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintln(stdout, userUsage)
		return 0
	}
	if len(args) < 2 || args[0] != "mfa" || (args[1] != "enroll" && args[1] != "reset") {
		switch {
		case len(args) == 0:
			fmt.Fprintln(stderr, "cvpn user: missing subcommand (mfa enroll, mfa reset)")
		case args[0] != "mfa":
			fmt.Fprintf(stderr, "cvpn user: unknown subcommand %q (want mfa)\n", args[0])
		case len(args) == 1:
			fmt.Fprintln(stderr, "cvpn user mfa: missing subcommand (enroll, reset)")
		default:
			fmt.Fprintf(stderr, "cvpn user mfa: unknown subcommand %q (want enroll or reset)%s\n", args[1], suggest(args[1], []string{"enroll", "reset"}))
		}
		fmt.Fprintln(stderr, userUsage)
		return exitInvalid
	}
	verb := args[1]
	name := "user mfa " + verb
	fs := newFlagSet(name, stderr)
	path := configFileFlag(fs)
	force := false
	if verb == "enroll" {
		fs.BoolVar(&force, "force", false, "replace the secret of a user who is enrolled already")
	}
	user, rest := leadingName(args[2:])
	if err := fs.Parse(rest); err != nil {
		return flagExit(err)
	}
	if user == "" && fs.NArg() == 1 {
		user = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cvpn %s: unexpected arguments: %q\n", name, fs.Args())
		return exitInvalid
	}
	if user == "" {
		fmt.Fprintf(stderr, "cvpn %s: missing the user's NAME (the directory login name)\n", name)
		return exitInvalid
	}
	file, err := resolveConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitInvalid
	}
	ep, err := config.Load(file)
	if err != nil {
		printConfigError(stderr, err)
		return exitInvalid
	}
	if ep.Authentication.Directory == nil || ep.Authentication.MFA == nil {
		fmt.Fprintf(stderr, "cvpn %s: %s has no authentication.directory with authentication.mfa: its users have no second factor\n", name, file)
		return exitInvalid
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var uri string
	err = withEnrolments(ctx, ep, func(e admin.Enrolments) error {
		if verb == "reset" {
			return e.Reset(ctx, user)
		}
		var err error
		uri, err = e.Enroll(ctx, user, force)
		if errors.Is(err, admin.ErrEnrolled) {
			err = fmt.Errorf("%s is enrolled already; --force replaces the secret (the old authenticator stops working)", user)
		}
		return err
	})
	if err != nil {
		fmt.Fprintf(stderr, "cvpn %s: %v\n", name, err)
		return exitRuntime
	}
	if verb == "reset" {
		fmt.Fprintf(stdout, "%s's authenticator is removed; they cannot log in until enrolled again (cvpn user mfa enroll %s)\n", user, user)
		return 0
	}
	printEnrollment(stdout, user, uri)
	return 0
}

// withEnrolments runs f on the endpoint's TOTP enrolments: in the state store itself when no
// endpoint holds it, else through the running endpoint's admin API.
func withEnrolments(ctx context.Context, ep *config.Endpoint, f func(admin.Enrolments) error) error {
	e, closeStore, err := endpoint.OpenEnrolments(ep)
	if errors.Is(err, state.ErrInUse) {
		return f(adminEnrolments{admin.NewClient(ep.Admin.Socket)})
	}
	if err != nil {
		return err
	}
	defer closeStore()
	return f(e)
}

// adminEnrolments are the enrolments of a running endpoint, through its admin API.
type adminEnrolments struct{ c *admin.Client }

func (a adminEnrolments) Enroll(ctx context.Context, user string, force bool) (string, error) {
	out, err := a.c.EnrollUserMFA(ctx, admin.EnrollUserMfaInput{Username: user, Force: force})
	var e *admin.Error
	if errors.As(err, &e) && e.Code == "IncorrectState" {
		return "", admin.ErrEnrolled
	}
	if err != nil {
		return "", err
	}
	return out.OtpauthURI, nil
}

func (a adminEnrolments) Reset(ctx context.Context, user string) error {
	_, err := a.c.ResetUserMFA(ctx, admin.ResetUserMfaInput{Username: user})
	return err
}

// printEnrollment prints an enrolment for the operator to hand over: the QR code, the URI
// and the secret for manual entry.
func printEnrollment(w io.Writer, user, uri string) {
	fmt.Fprintf(w, "Scan with an authenticator app (for %s):\n\n", user)
	mfa.WriteQR(w, uri)
	fmt.Fprintf(w, "\notpauth URI: %s\n", uri)
	if u, err := url.Parse(uri); err == nil {
		fmt.Fprintf(w, "secret (manual entry, TOTP, SHA1, 6 digits, 30 s): %s\n", u.Query().Get("secret"))
	}
	fmt.Fprintln(w, "\nAnyone who sees this can generate the user's codes: hand it over privately.")
}

// leadingName splits off a NAME given before the flags.
func leadingName(args []string) (string, []string) {
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		return args[0], args[1:]
	}
	return "", args
}
