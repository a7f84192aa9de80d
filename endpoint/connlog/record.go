// Package connlog writes the connection log: one JSON object per line, with exactly the keys of
// AWS Client VPN's connection log (and, where they apply, client-ipv6 and a cluster node's
// node-name), for every attempt to connect (admitted or refused), every
// five minutes for each live connection, and once more when a connection ends. It owns the
// file (group commit, reopening for logrotate, a bounded queue) and the record schema, and
// reads the log back for the usage report. It does not decide what is logged when: the engine
// reports sessions through tunnel.Events, which Log implements.
package connlog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cvpn/cvpn/tunnel/session"
)

// TimeLayout is how the log writes times, always in UTC (AWS's layout).
const TimeLayout = "2006-01-02 15:04:05"

// NA is the value of a key that does not apply to a record, as AWS writes it.
const NA = "NA"

// Values of connection-log-type and connection-attempt-status.
const (
	TypeAttempt   = "connection-attempt"
	StatusSuccess = "successful"
	StatusFailed  = "failed"
)

// Record is one line of the log. Every key is AWS's and every value a string, NA where it does
// not apply. A connection has a record when it is admitted (connection-end-time NA), one every
// update interval while it lasts (the same, with connection-last-update-time and the counters
// current), and a final one with connection-end-time set. A refused attempt has one record,
// connection-attempt-status "failed", with the reason.
type Record struct {
	LogType           string `json:"connection-log-type"`
	AttemptStatus     string `json:"connection-attempt-status"`
	ResetStatus       string `json:"connection-reset-status"`
	FailureReason     string `json:"connection-attempt-failure-reason"`
	ConnectionID      string `json:"connection-id"`
	EndpointID        string `json:"client-vpn-endpoint-id"`
	TransportProtocol string `json:"transport-protocol"`
	StartTime         string `json:"connection-start-time"`
	LastUpdateTime    string `json:"connection-last-update-time"`
	ClientIP          string `json:"client-ip"`
	// ClientIPv6 is the client's IPv6 tunnel address, absent when it has none: AWS's records
	// name the IPv4 address alone, and an IPv6 session needs its address recorded too.
	ClientIPv6                string `json:"client-ipv6,omitempty"`
	CommonName                string `json:"common-name"`
	DeviceType                string `json:"device-type"`
	DeviceIP                  string `json:"device-ip"`
	Port                      string `json:"port"`
	IngressBytes              string `json:"ingress-bytes"`
	EgressBytes               string `json:"egress-bytes"`
	IngressPackets            string `json:"ingress-packets"`
	EgressPackets             string `json:"egress-packets"`
	EndTime                   string `json:"connection-end-time"`
	DurationSeconds           string `json:"connection-duration-seconds"`
	PostureComplianceStatuses string `json:"posture-compliance-statuses"`
	Username                  string `json:"username"`
	// Node names the cluster node that wrote the record (config.Cluster.NodeName), absent on a
	// single node so that its records keep exactly AWS's keys: each node of a cluster keeps its
	// own log, and a report over several nodes' logs tells their connections apart by it.
	Node string `json:"node-name,omitempty"`
}

// Final reports whether r is the last record of its connection.
func (r *Record) Final() bool {
	return r.AttemptStatus == StatusSuccess && r.EndTime != NA && r.EndTime != ""
}

// User is who the record is about: the username, else the certificate's common name.
func (r *Record) User() string {
	if r.Username != NA && r.Username != "" {
		return r.Username
	}
	return r.CommonName
}

// Append appends r as one line (JSON and a newline) to b.
func (r Record) Append(b []byte) []byte {
	j, err := json.Marshal(r)
	if err != nil { // a struct of strings always marshals
		panic("connlog: " + err.Error())
	}
	return append(append(b, j...), '\n')
}

// FormatTime writes t as the log does: UTC in TimeLayout; NA for the zero time.
func FormatTime(t time.Time) string {
	if t.IsZero() {
		return NA
	}
	return t.UTC().Format(TimeLayout)
}

// ParseTime reads a time the log wrote.
func ParseTime(s string) (time.Time, error) { return time.ParseInLocation(TimeLayout, s, time.UTC) }

func na(s string) string {
	if s == "" {
		return NA
	}
	return s
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return NA
	}
	return a.Unmap().String()
}

// deviceType names the client's platform (its IV_PLAT) as AWS does: windows, mac, linux, ios,
// android.
func deviceType(plat string) string {
	switch plat {
	case "":
		return NA
	case "win":
		return "windows"
	}
	return plat
}

// username is the username the client gave; NA when the user is the certificate's common name
// (certificate authentication, where AWS writes NA too).
func username(user, cn string) string {
	if user == cn {
		return NA
	}
	return na(user)
}

// commonName is the certificate's common name, or (as AWS writes it) the directory user's name
// when the client presented no certificate.
func commonName(cn, username string) string {
	if cn == "" {
		return username
	}
	return cn
}

// AttemptRecord is the record of a refused attempt.
func AttemptRecord(a session.Attempt, endpointID string) Record {
	t := FormatTime(a.Time)
	r := Record{
		LogType: TypeAttempt, AttemptStatus: StatusFailed, ResetStatus: NA, FailureReason: na(a.Reason),
		ConnectionID: na(a.ConnectionID), EndpointID: na(endpointID), TransportProtocol: na(a.Transport),
		StartTime: t, LastUpdateTime: t, ClientIP: NA, CommonName: na(a.CommonName), DeviceType: NA,
		DeviceIP: NA, Port: NA, IngressBytes: NA, EgressBytes: NA, IngressPackets: NA, EgressPackets: NA,
		EndTime: NA, DurationSeconds: NA, PostureComplianceStatuses: NA, Username: username(a.User, a.CommonName),
	}
	if a.Remote.IsValid() {
		r.DeviceIP, r.Port = addrString(a.Remote.Addr()), strconv.Itoa(int(a.Remote.Port()))
	}
	if a.Code != "" && a.Reason != "" {
		r.FailureReason = string(a.Code) + ": " + a.Reason
	}
	return r
}

// ConnectionRecord is the record of an established connection as it is at now: admitted or
// live (end is nil), or ended.
func ConnectionRecord(s session.Status, endpointID string, now time.Time, end *session.End) Record {
	r := Record{
		LogType: TypeAttempt, AttemptStatus: StatusSuccess, ResetStatus: NA, FailureReason: NA,
		ConnectionID: na(s.ConnectionID), EndpointID: na(endpointID), TransportProtocol: na(s.Transport),
		StartTime: FormatTime(s.Since), LastUpdateTime: FormatTime(now), ClientIP: addrString(s.Address),
		CommonName: na(commonName(s.CommonName, s.Username)), DeviceType: deviceType(s.Platform), DeviceIP: NA, Port: NA,
		IngressBytes:   strconv.FormatUint(s.Traffic.RxBytes, 10),
		EgressBytes:    strconv.FormatUint(s.Traffic.TxBytes, 10),
		IngressPackets: strconv.FormatUint(s.Traffic.RxPackets, 10),
		EgressPackets:  strconv.FormatUint(s.Traffic.TxPackets, 10),
		EndTime:        NA, PostureComplianceStatuses: NA, Username: username(s.User, s.CommonName),
	}
	if s.Username != "" {
		r.Username = s.Username
	}
	if s.Address6.IsValid() {
		r.ClientIPv6 = s.Address6.String()
	}
	if len(s.Posture) > 0 {
		r.PostureComplianceStatuses = strings.Join(s.Posture, ",")
	}
	if s.Remote.IsValid() {
		r.DeviceIP, r.Port = addrString(s.Remote.Addr()), strconv.Itoa(int(s.Remote.Port()))
	}
	from := s.Established
	if from.IsZero() {
		from = s.Since
	}
	if end != nil {
		now = end.Time
		r.LastUpdateTime, r.EndTime = FormatTime(end.Time), FormatTime(end.Time)
	}
	r.DurationSeconds = strconv.FormatInt(int64(max(now.Sub(from), 0)/time.Second), 10)
	return r
}

// EndpointID derives a client-vpn-endpoint-id ("cvpn-endpoint-" and 17 hex digits, AWS's form)
// from what names an endpoint, so that it stays the same across restarts.
func EndpointID(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return "cvpn-endpoint-" + hex.EncodeToString(sum[:])[:17]
}
