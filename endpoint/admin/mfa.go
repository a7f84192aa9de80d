package admin

import (
	"context"
	"errors"
	"time"
)

// Enrolments are a running endpoint's TOTP enrolments (its second factor): the store is held
// by the running process, so the CLI enrols and resets users through the API while it runs.
type Enrolments interface {
	// Enroll gives user a new secret and returns its otpauth URI; a user enrolled already keeps
	// the old secret (ErrEnrolled) unless force.
	Enroll(ctx context.Context, user string, force bool) (uri string, err error)
	// Reset removes user's secret.
	Reset(ctx context.Context, user string) error
}

// ErrEnrolled refuses to replace the secret of an enrolled user without force.
var ErrEnrolled = errors.New("the user is enrolled already; force replaces the secret (the old authenticator stops working)")

// EnrollUserMfaInput is the request of CvpnEnrollUserMfa, a cvpn extension (AWS has no API for
// its directory's MFA).
type EnrollUserMfaInput struct {
	Username string `json:"Username"`
	Force    bool   `json:"Force,omitempty"`
}

// EnrollUserMfaOutput carries the new secret as an otpauth URI: only root and the service's
// user may call the API, and the CLI shows it to the operator once.
type EnrollUserMfaOutput struct {
	Username   string `json:"Username"`
	OtpauthURI string `json:"OtpauthUri"`
}

// ResetUserMfaInput is the request of CvpnResetUserMfa.
type ResetUserMfaInput struct {
	Username string `json:"Username"`
}

// ResetUserMfaOutput answers CvpnResetUserMfa.
type ResetUserMfaOutput struct {
	Username string `json:"Username"`
}

// mfaTimeout bounds an enrolment's work on the store.
const mfaTimeout = 10 * time.Second

func (s *Source) enrolments() (Enrolments, error) {
	if s.MFA == nil {
		return nil, &Error{Code: "InvalidConfiguration", Message: "the endpoint has no second factor (authentication.mfa)"}
	}
	e, err := s.MFA()
	if err != nil {
		return nil, &Error{Code: "InvalidConfiguration", Message: err.Error()}
	}
	return e, nil
}

func checkUsername(u string) error {
	if u == "" || len(u) > 256 {
		return &Error{Code: "MissingParameter", Message: "Username: give the directory login name (at most 256 bytes)"}
	}
	return nil
}

func (s *Source) enrollUserMFA(ctx context.Context, in EnrollUserMfaInput) (EnrollUserMfaOutput, error) {
	if err := checkUsername(in.Username); err != nil {
		return EnrollUserMfaOutput{}, err
	}
	e, err := s.enrolments()
	if err != nil {
		return EnrollUserMfaOutput{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, mfaTimeout)
	defer cancel()
	uri, err := e.Enroll(ctx, in.Username, in.Force)
	if errors.Is(err, ErrEnrolled) {
		return EnrollUserMfaOutput{}, &Error{Code: "IncorrectState", Message: in.Username + ": " + err.Error()}
	}
	if err != nil {
		return EnrollUserMfaOutput{}, err
	}
	return EnrollUserMfaOutput{Username: in.Username, OtpauthURI: uri}, nil
}

func (s *Source) resetUserMFA(ctx context.Context, in ResetUserMfaInput) (ResetUserMfaOutput, error) {
	if err := checkUsername(in.Username); err != nil {
		return ResetUserMfaOutput{}, err
	}
	e, err := s.enrolments()
	if err != nil {
		return ResetUserMfaOutput{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, mfaTimeout)
	defer cancel()
	if err := e.Reset(ctx, in.Username); err != nil {
		return ResetUserMfaOutput{}, err
	}
	return ResetUserMfaOutput(in), nil
}

// EnrollUserMFA enrols a user of the running endpoint's second factor (CvpnEnrollUserMfa).
func (c *Client) EnrollUserMFA(ctx context.Context, in EnrollUserMfaInput) (*EnrollUserMfaOutput, error) {
	var out EnrollUserMfaOutput
	return &out, c.call(ctx, "CvpnEnrollUserMfa", in, &out)
}

// ResetUserMFA removes a user's secret of the running endpoint's second factor
// (CvpnResetUserMfa).
func (c *Client) ResetUserMFA(ctx context.Context, in ResetUserMfaInput) (*ResetUserMfaOutput, error) {
	var out ResetUserMfaOutput
	return &out, c.call(ctx, "CvpnResetUserMfa", in, &out)
}
