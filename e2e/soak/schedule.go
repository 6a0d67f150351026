package soak

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// The soak's schedule: what the users of a cluster do and what breaks, when,
// derived from the seed and the duration alone (never from what happens in the
// run), so that a seed replays the same life.

// User operations on Ingresses and Secrets.
const (
	opCreate        = "create"         // a new Ingress (Create holds it), with a foreign Secret first if Create.Foreign
	opAddHost       = "add-host"       // a rule for Hosts[0]
	opRemoveHost    = "remove-host"    // the rules for Hosts[0] go
	opOptIn         = "opt-in"         // kubernetes.io/tls-acme set to Value ("" removes it)
	opKeyType       = "key-type"       // ingress-acme.io/key-type set to Value ("" removes it)
	opProfile       = "profile"        // ingress-acme.io/profile set to Value ("" removes it)
	opClass         = "class"          // spec.ingressClassName set to Value ("" removes it)
	opUserTLS       = "user-tls"       // spec.tls replaced by the user's own entry TLS
	opDropUserTLS   = "drop-user-tls"  // the user's spec.tls entry removed
	opAddPath       = "add-path"       // path Value (Prefix, to the app) added to every rule
	opDelete        = "delete"         // the Ingress deleted
	opDeleteSecret  = "delete-secret"  // the certificate's Secret deleted
	opCorruptSecret = "corrupt-secret" // the certificate's Secret's tls.crt overwritten with garbage
	opForeignSecret = "foreign-secret" // the certificate's Secret replaced by one the controller does not own
)

// Faults.
const (
	faultKill      = "kill"              // SIGKILL replica Value ("leader" or "follower"), started again after Dur
	faultTerm      = "term"              // SIGTERM the leader, started again after Dur
	faultFailover  = "failover"          // SIGKILL the leader; the other replica takes over; started again after Dur
	faultCrashLoop = "crashloop"         // the leader SIGKILLed Count times, each Dur after it was ready again
	faultPebble    = "pebble-restart"    // the CA stopped, and started again after Dur (new roots, no state)
	faultCACut     = "ca-cut"            // the CA unreachable for Dur
	faultAPIServer = "apiserver-restart" // kube-apiserver stopped, and started again after Dur
)

// FaultKinds are the kinds of fault, each scheduled in turn.
var FaultKinds = []string{faultKill, faultTerm, faultFailover, faultCrashLoop, faultPebble, faultCACut, faultAPIServer}

// Ingress classes the driver uses: unset and soakClassServed are served by
// Traefik, soakClassUnserved by nobody (the CA cannot reach its hosts).
const (
	soakClassServed   = "soak-traefik"
	soakClassUnserved = "soak-nobody"
)

var (
	soakKeyTypes = []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-4096"}
	soakProfiles = []string{"shortlived", "default"}
)

// planTLS is a spec.tls entry written by the user.
type planTLS struct {
	Secret string
	Hosts  []string // host labels; nil: none listed (every rule host)
}

func (t *planTLS) String() string {
	if t == nil {
		return "-"
	}
	return fmt.Sprintf("%s:%s", t.Secret, strings.Join(t.Hosts, ","))
}

// planIngress is the part of an Ingress its user owns, as the user last wrote it.
type planIngress struct {
	Idx     int      // i<Idx> is its name
	NS      int      // index of its namespace
	Hosts   []string // host labels (h<n>), in rule order
	OptIn   string   // value of kubernetes.io/tls-acme, "" when absent
	KeyType string   // "" when absent
	Profile string   // "" when absent
	Class   string   // "" when unset
	TLS     *planTLS // the user's own spec.tls entry, nil when none
	Paths   []string // paths added to every rule besides "/"
	Foreign bool     // at creation: a foreign Secret is created first under its certificate's name
}

func (p *planIngress) clone() *planIngress {
	c := *p
	c.Hosts, c.Paths = slices.Clone(p.Hosts), slices.Clone(p.Paths)
	if p.TLS != nil {
		t := *p.TLS
		t.Hosts = slices.Clone(p.TLS.Hosts)
		c.TLS = &t
	}
	return &c
}

func (p *planIngress) name() string { return fmt.Sprintf("i%d", p.Idx) }

// secret is the name of the Secret its certificate goes to.
func (p *planIngress) secret() string {
	if p.TLS != nil {
		return p.TLS.Secret
	}
	return p.name() + "-tls"
}

func (p *planIngress) String() string {
	s := fmt.Sprintf("%s ns%d hosts=[%s] opt-in=%q key=%q profile=%q class=%q tls=%s paths=%v",
		p.name(), p.NS, strings.Join(p.Hosts, " "), p.OptIn, p.KeyType, p.Profile, p.Class, p.TLS, p.Paths)
	if p.Foreign {
		s += " (foreign Secret first)"
	}
	return s
}

// apply changes p as op does (user operations on the Ingress itself; the
// others leave p as it is).
func (p *planIngress) apply(op Op) {
	switch op.Kind {
	case opAddHost:
		p.Hosts = append(p.Hosts, op.Host)
	case opRemoveHost:
		p.Hosts = slices.DeleteFunc(p.Hosts, func(h string) bool { return h == op.Host })
		if p.TLS != nil && p.TLS.Hosts != nil {
			p.TLS.Hosts = slices.DeleteFunc(p.TLS.Hosts, func(h string) bool { return h == op.Host })
			if len(p.TLS.Hosts) == 0 {
				p.TLS.Hosts = nil
			}
		}
	case opOptIn:
		p.OptIn = op.Value
	case opKeyType:
		p.KeyType = op.Value
	case opProfile:
		p.Profile = op.Value
	case opClass:
		p.Class = op.Value
	case opUserTLS:
		t := *op.TLS
		t.Hosts = slices.Clone(op.TLS.Hosts)
		p.TLS = &t
	case opDropUserTLS:
		p.TLS = nil
	case opAddPath:
		p.Paths = append(p.Paths, op.Value)
	}
}

// Op is one step of the schedule: a user operation or a fault.
type Op struct {
	At     time.Duration
	Kind   string
	Ing    int          // the Ingress's index (user operations)
	Create *planIngress // opCreate: the Ingress as created
	Host   string       // opAddHost, opRemoveHost: the host label
	Value  string
	TLS    *planTLS      // opUserTLS
	Dur    time.Duration // faults
	Count  int           // faultCrashLoop
	Fault  bool
}

func (o Op) String() string {
	at := fmt.Sprintf("+%7.3fs", o.At.Seconds())
	switch {
	case o.Fault:
		s := fmt.Sprintf("%s FAULT %s dur=%s", at, o.Kind, o.Dur)
		if o.Value != "" {
			s += " target=" + o.Value
		}
		if o.Count > 0 {
			s += fmt.Sprintf(" count=%d", o.Count)
		}
		return s
	case o.Kind == opCreate:
		return fmt.Sprintf("%s create %s", at, o.Create)
	case o.Kind == opUserTLS:
		return fmt.Sprintf("%s i%d %s %s", at, o.Ing, o.Kind, o.TLS)
	case o.Host != "":
		return fmt.Sprintf("%s i%d %s %s", at, o.Ing, o.Kind, o.Host)
	}
	return fmt.Sprintf("%s i%d %s %q", at, o.Ing, o.Kind, o.Value)
}

// Plan is a whole schedule.
type Plan struct {
	Seed       uint64
	Duration   time.Duration
	Namespaces int
	Ops        []Op // user operations and faults, by time
}

// Digest identifies the schedule, to confirm a replay runs the same one.
func (p *Plan) Digest() string {
	h := sha256.New()
	for _, o := range p.Ops {
		fmt.Fprintln(h, o)
	}
	return fmt.Sprintf("%x", h.Sum(nil))[:16]
}

func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, duration %s, %d namespaces, schedule %s\n", p.Seed, p.Duration, p.Namespaces, p.Digest())
	for _, o := range p.Ops {
		fmt.Fprintln(&b, o)
	}
	return b.String()
}

// QuietTail is how long before the end no fault starts (at most a third of
// the run), so that the run ends with everything settled and every promise
// checkable.
const QuietTail = 30 * time.Second

// NewPlan derives the schedule from seed and duration only.
func NewPlan(seed uint64, d time.Duration, namespaces int) *Plan {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo)+1)) }
	plan := &Plan{Seed: seed, Duration: d, Namespaces: namespaces}

	// Users.
	live := map[int]*planIngress{}
	nextIng, nextHost, nextPath := 0, 0, 0
	newHost := func() string { nextHost++; return fmt.Sprintf("h%d", nextHost) }
	maxLive := min(24, 10+int(d/(2*time.Minute)))
	pick := func(ok func(*planIngress) bool) *planIngress {
		var cands []*planIngress
		for _, idx := range sortedIdx(live) {
			if ok(live[idx]) {
				cands = append(cands, live[idx])
			}
		}
		if len(cands) == 0 {
			return nil
		}
		return cands[rng.IntN(len(cands))]
	}
	foreign := map[string]bool{} // Secrets (namespace index/name) a foreign Secret took
	foreignKey := func(p *planIngress) string { return fmt.Sprintf("%d/%s", p.NS, p.secret()) }
	create := func(at time.Duration) {
		p := &planIngress{Idx: nextIng, NS: rng.IntN(namespaces)}
		nextIng++
		for range 1 + rng.IntN(3) {
			p.Hosts = append(p.Hosts, newHost())
		}
		if rng.IntN(100) < 70 {
			p.OptIn = "true"
		}
		if rng.IntN(100) < 25 {
			p.KeyType = soakKeyTypes[rng.IntN(len(soakKeyTypes))]
		}
		switch r := rng.IntN(100); {
		case r < 40:
			p.Profile = "shortlived"
		case r < 55:
			p.Profile = "default"
		}
		switch r := rng.IntN(100); {
		case r < 10:
			p.Class = soakClassServed
		case r < 14:
			p.Class = soakClassUnserved
		}
		if rng.IntN(100) < 20 {
			p.TLS = &planTLS{Secret: fmt.Sprintf("u%d-tls", p.Idx)}
			if rng.IntN(100) < 60 {
				p.TLS.Hosts = slices.Clone(p.Hosts[:1+rng.IntN(len(p.Hosts))])
			}
		}
		if p.OptIn == "true" && rng.IntN(100) < 8 {
			p.Foreign = true
			foreign[foreignKey(p)] = true
		}
		live[p.Idx] = p
		plan.Ops = append(plan.Ops, Op{At: at, Kind: opCreate, Ing: p.Idx, Create: p.clone()})
	}
	for i := range 6 {
		create(time.Duration(i) * 250 * time.Millisecond)
	}
	type choice struct {
		kind   string
		weight int
		ok     func(*planIngress) bool
	}
	always := func(*planIngress) bool { return true }
	managed := func(p *planIngress) bool { return p.OptIn == "true" && !foreign[foreignKey(p)] }
	choices := []choice{
		{opAddHost, 10, func(p *planIngress) bool { return len(p.Hosts) < 4 }},
		{opRemoveHost, 6, func(p *planIngress) bool { return len(p.Hosts) > 1 }},
		{opOptIn, 8, always},
		{opKeyType, 6, always},
		{opProfile, 6, always},
		{opClass, 5, always},
		{opUserTLS, 4, func(p *planIngress) bool { return p.TLS == nil }},
		{opDropUserTLS, 3, func(p *planIngress) bool { return p.TLS != nil }},
		{opAddPath, 5, func(p *planIngress) bool { return len(p.Paths) < 3 }},
		{opDelete, 4, func(*planIngress) bool { return len(live) > 4 }},
		{opDeleteSecret, 5, managed},
		{opCorruptSecret, 4, managed},
		{opForeignSecret, 2, managed},
	}
	for at := 1500 * time.Millisecond; at < d; at += between(300*time.Millisecond, 1200*time.Millisecond) {
		if len(live) < maxLive && rng.IntN(100) < 14 {
			create(at)
			continue
		}
		total := 0
		for _, c := range choices {
			total += c.weight
		}
		r := rng.IntN(total)
		var c choice
		for _, c = range choices {
			if r < c.weight {
				break
			}
			r -= c.weight
		}
		p := pick(c.ok)
		if p == nil {
			continue
		}
		op := Op{At: at, Kind: c.kind, Ing: p.Idx}
		switch c.kind {
		case opAddHost:
			op.Host = newHost()
		case opRemoveHost:
			op.Host = p.Hosts[rng.IntN(len(p.Hosts))]
		case opOptIn:
			switch p.OptIn {
			case "true":
				op.Value = []string{"", "false"}[rng.IntN(2)]
			default:
				op.Value = "true"
			}
		case opKeyType:
			op.Value = append([]string{""}, soakKeyTypes...)[rng.IntN(len(soakKeyTypes)+1)]
		case opProfile:
			op.Value = []string{"", "shortlived", "default"}[rng.IntN(3)]
		case opClass:
			op.Value = []string{"", soakClassServed, soakClassUnserved}[rng.IntN(3)]
		case opUserTLS:
			op.TLS = &planTLS{Secret: fmt.Sprintf("u%d-tls", p.Idx)}
			if rng.IntN(100) < 60 {
				op.TLS.Hosts = slices.Clone(p.Hosts[:1+rng.IntN(len(p.Hosts))])
			}
		case opDropUserTLS:
			op.Value = p.TLS.Secret
		case opAddPath:
			nextPath++
			op.Value = fmt.Sprintf("/app%d", nextPath)
		case opDelete:
			delete(live, p.Idx)
		case opForeignSecret:
			foreign[foreignKey(p)] = true
		}
		p.apply(op)
		plan.Ops = append(plan.Ops, op)
	}

	// Faults: one at a time, between 8% of the run and the quiet tail, each kind
	// in turn in an order the seed shuffles.
	end := d - min(QuietTail, d/3)
	long := d > 3*time.Minute
	var kinds []string
	for at := d*8/100 + between(0, 2*time.Second); at < end; {
		if len(kinds) == 0 {
			kinds = slices.Clone(FaultKinds)
			rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		}
		f := Op{At: at, Kind: kinds[0], Fault: true}
		kinds = kinds[1:]
		busy := time.Duration(0)
		switch f.Kind {
		case faultKill:
			f.Value = []string{"leader", "follower"}[rng.IntN(2)]
			f.Dur = between(300*time.Millisecond, 2500*time.Millisecond)
			busy = f.Dur + 3*time.Second
		case faultTerm:
			f.Value = "leader"
			f.Dur = between(300*time.Millisecond, 2*time.Second)
			busy = f.Dur + 3*time.Second
		case faultFailover:
			f.Value = "leader"
			f.Dur = between(3*time.Second, 8*time.Second)
			busy = f.Dur + 3*time.Second
		case faultCrashLoop:
			f.Value = "leader"
			f.Count = 3 + rng.IntN(3)
			f.Dur = between(time.Second, 2500*time.Millisecond)
			busy = time.Duration(f.Count) * (f.Dur + 3*time.Second)
		case faultPebble:
			f.Dur = between(200*time.Millisecond, 2*time.Second)
			busy = f.Dur + time.Second
		case faultCACut:
			hi := 10 * time.Second
			if long {
				hi = 40 * time.Second
			}
			f.Dur = between(2*time.Second, hi)
			busy = f.Dur
		case faultAPIServer:
			f.Dur = between(500*time.Millisecond, 2500*time.Millisecond)
			busy = f.Dur + 5*time.Second
		}
		plan.Ops = append(plan.Ops, f)
		gap := between(time.Second, 4*time.Second)
		if long {
			gap = between(3*time.Second, 25*time.Second)
		}
		at += busy + gap
	}
	slices.SortStableFunc(plan.Ops, func(a, b Op) int { return int(a.At - b.At) })
	return plan
}

func sortedIdx[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
