#!/usr/bin/perl
# The spawn host, Perl edition: starts workers for the manager (commands, and module workers)
# and reports how they ended. The frames it reads and writes are described in
# src/child/host-protocol.js; the Node edition (spawn-host.js) speaks the same protocol. The
# manager prefers this one where a `perl` is installed: forking from this ~5 MB process costs
# about half of what forking from a Node process does, and every worker is a fork.
#
# Containment (docs/containment.md). Each worker is started by a keeper: a fork of this host
# that makes itself a child subreaper, forks the worker, and stays until the worker's whole
# tree is gone. Whatever the worker starts (in its group, after setsid, double-forked) is
# either still below the worker or has been re-parented to the keeper, so the keeper can find
# and kill all of it, and it signals only its own children that it has not reaped yet: a pid
# cannot be reused until its parent reaps it, so no signal can reach a stranger. The host is a
# subreaper too: what a keeper that was killed leaves behind comes here and is killed at once.
#
# Scale (docs/benchmark-notes.md, "Scale and memory"). The host does as little per worker as it
# can, because it is one process serving thousands: per worker it holds one socket to the
# keeper, and forks. The keeper does the rest: the worker's pipes, its input, its output (the
# answer, the stderr tail), the exec status, and it sends the host one report at the end. The
# host waits with epoll (one wake-up per event, whatever the number of workers), and starts
# queued workers a few at a time between events, so an exit is never stuck behind a burst of
# spawns, and a worker the manager gave up on before it started is never started.
#
# Arguments: MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS MAX_PROGRESS PROGRESS_PREFIX (the limits and
# the progress line's prefix, from protocol.js).
# Uses only modules of perl-base (Debian's essential Perl).
use strict;
use warnings;
use Config;
use Errno ();
use Fcntl qw(F_GETFL F_SETFL F_SETFD O_NONBLOCK O_RDWR);
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC pack_sockaddr_un);

my ($MAX_OUTPUT, $STDERR_TAIL, $FLUSH_LIMIT_MS, $MAX_PROGRESS, $PROGRESS_PREFIX) = @ARGV;
die "usage: spawn-host.pl MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS MAX_PROGRESS PROGRESS_PREFIX\n" unless defined $PROGRESS_PREFIX;
my $PREFIX_LENGTH = length $PROGRESS_PREFIX;

my $TICKS = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
my @SIGNAME = split ' ', $Config{sig_name};
# No syscall.ph in perl-base: the numbers of the calls used here, per architecture, and the
# layout of struct epoll_event (packed on x86_64, aligned elsewhere).
my %SYSCALLS = (
  x86_64 => { prctl => 157, epoll_create1 => 291, epoll_ctl => 233, epoll_pwait => 281, ppoll => 271, close_range => 436, event => 'L Q' },
  aarch64 => { prctl => 167, epoll_create1 => 20, epoll_ctl => 21, epoll_pwait => 22, ppoll => 73, close_range => 436, event => 'L x4 Q' },
);
my ($ARCH) = $Config{archname} =~ /^(x86_64|aarch64)/;
my $SYS = $ARCH ? $SYSCALLS{$ARCH} : undef;
my ($PR_SET_PDEATHSIG, $PR_SET_CHILD_SUBREAPER) = (1, 36);
my ($EPOLLIN, $EPOLLOUT, $EPOLL_CTL_ADD, $EPOLL_CTL_DEL, $EPOLL_CLOEXEC) = (1, 4, 1, 2, 0x80000);
my ($POLLIN, $POLLOUT, $POLLERR, $POLLHUP, $POLLNVAL) = (1, 4, 8, 16, 32);
# A keeper reads the memory of its worker's tree this often when a cap is set.
my $MEMORY_POLL_MS = 100;
# Keepers forked per turn of the host's loop before it looks at its sockets again.
my $SPAWN_BATCH = 8;

sub prctl { return $SYS && syscall($SYS->{prctl}, $_[0], $_[1], 0, 0, 0) == 0 }

# The kernel's sigset_t (64 bits) with these signals in it.
sub sigmask { my $bits = 0; $bits |= 1 << ($_ - 1) for @_; return pack 'Q', $bits }

# The manager decides when workers stop: a Ctrl-C reaching the whole terminal group must not
# kill the host under them, and a command that does not read its input must make the write
# fail with EPIPE, not kill the host. Blocking SIGINT, SIGTERM and SIGPIPE (rather than
# ignoring them) does both and leaves their default actions in place for the children, which
# inherit the mask and clear it just before exec: a SIGTERM that reaches a child between its
# fork and its exec waits there instead of being lost.
my @HELD = (POSIX::SIGINT(), POSIX::SIGTERM(), POSIX::SIGPIPE());
my $HELD = POSIX::SigSet->new(@HELD);
my $NONE = POSIX::SigSet->new;
# SIGCHLD (a child's exit) and SIGUSR1 (a keeper's host died) wake a wait; they are blocked the
# rest of the time, and unblocked only inside it (epoll_pwait, ppoll), so none can slip in
# between a check and the wait.
my $WAKE = POSIX::SigSet->new(POSIX::SIGCHLD(), POSIX::SIGUSR1());
POSIX::sigprocmask(POSIX::SIG_BLOCK(), $HELD);
POSIX::sigprocmask(POSIX::SIG_BLOCK(), $WAKE);
my $WAIT_MASK = sigmask(@HELD);   # in a wait: only what the host never takes stays blocked
$SIG{CHLD} = $SIG{USR1} = sub { };

binmode $_ for \*STDIN, \*STDOUT, \*STDERR;

my $HOST_PID = $$;
my $CONTAINMENT = prctl($PR_SET_CHILD_SUBREAPER, 1) ? 'subreaper' : 'group';

# The worker's command line, directory and ids, where its answer comes (fd 1 or 3), its tree's
# memory cap, and the socket a reused worker's channel connects to, from the configure frame
# (and its environment, which becomes the host's own).
my (@argv, $cwd, $uid, $gid, $answer_fd, $memory_limit, $channel);
my %jobs;      # id -> job, from its keeper's fork to its report
my %by_pid;    # keeper pid -> job
my %by_fd;     # fileno of a keeper's socket -> job
my @queue;     # ids of workers asked for and not started yet, oldest first
my %queued;    # id -> [stdin or undef]
my $from_manager = '';
# Until then, look for strays among the host's children at every turn (see sweep_strays).
my $sweep_until = 0;

sub now_ms { my ($real) = POSIX::times(); return $real * 1000 / $TICKS }

# Blocking write of a whole buffer, through interruptions.
sub write_all {
  my ($fh, $data) = @_;
  my $off = 0;
  while ($off < length $data) {
    my $n = syswrite($fh, $data, length($data) - $off, $off);
    if (defined $n) { $off += $n; next }
    next if $!{EINTR};
    if ($!{EAGAIN}) { wait_writable(fileno $fh); next }
    return 0;
  }
  return 1;
}

sub wait_writable {
  my ($fd) = @_;
  my $w = '';
  vec($w, $fd, 1) = 1;
  select(undef, $w, undef, 0.05);
}

sub to_manager { write_all(\*STDOUT, $_[0]) or shutdown_host() }   # the manager is gone

sub errno_name {
  my ($errno) = @_;
  local $! = $errno;
  for my $name (keys %!) { return $name if $!{$name} }
  return "E$errno";
}

sub failure { my ($errno, $step) = @_; return join "\0", errno_name($errno), $step, do { local $! = $errno; "$!" } }

sub spawn_failed {
  my ($id, $payload) = @_;
  to_manager("F $id " . length($payload) . "\n$payload");
}

# A small file (of /proc) read whole, by raw fd: a keeper never opens a Perl handle (see
# close_inherited).
sub slurp {
  my $fd = POSIX::open($_[0], POSIX::O_RDONLY()) // return undef;
  my ($all, $buf) = ('', '');
  while ((POSIX::read($fd, $buf, 65536) // 0) > 0) { $all .= $buf }
  POSIX::close($fd);
  return $all;
}

# Pids of a process's children, from every one of its threads.
sub children_of {
  my ($pid, $one_thread) = @_;
  my @tasks = ($pid);
  if (!$one_thread) {
    opendir(my $dh, "/proc/$pid/task") or return;
    @tasks = grep { /^\d+$/ } readdir $dh;
  }
  my @kids;
  push @kids, split ' ', (slurp("/proc/$pid/task/$_/children") // '') for @tasks;
  return @kids;
}

# A process's start time (field 22 of its stat, clock ticks after boot), or '-' when it is
# gone: with the pid, it names the process once and for all (the manager's ledger keeps both).
sub start_of {
  my $stat = slurp("/proc/$_[0]/stat") // return '-';
  return $stat =~ /\)\s+(.*)/s ? (split ' ', $1)[19] // '-' : '-';
}

# The state letter of a process (R, S, Z, ...), or '' when it is gone.
sub state_of {
  my $stat = slurp("/proc/$_[0]/stat") // return '';
  return $stat =~ /\)\s+(\S)/ ? $1 : '';
}

sub resident_bytes {
  my $status = slurp("/proc/$_[0]/status") // return 0;
  return $status =~ /^VmRSS:\s+(\d+)/m ? $1 * 1024 : 0;
}

sub nonblocking {
  my ($fh) = @_;
  my $flags = fcntl($fh, F_GETFL, 0);
  fcntl($fh, F_SETFL, $flags | O_NONBLOCK) if defined $flags;
}

# ---- The keeper: one per worker, a fork of the host ----------------------------------------

# The worker's side of the fork: its group and session, its fds, its ids, then exec.
sub exec_worker {
  my ($in_r, $answer_w, $err_w, $status_w) = @_;
  my $step = 'exec';
  eval {
    # INT, TERM and PIPE (and the keeper's own) back to their default actions (exec resets
    # the handlers).
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), $NONE);
    $step = 'setsid'; POSIX::setsid() or die;   # its own group and session, like `detached`
    $step = 'dup2';
    POSIX::dup2(fileno $in_r, 0) // die;
    if ($answer_fd == 3 || defined $channel) {
      # Keep the status pipe off fd 3, then: stdout to the host's stderr, the answer (or the
      # channel) on 3.
      if (fileno($status_w) == 3) { open(my $moved, '>&', $status_w) or die; $status_w = $moved }
      POSIX::dup2(2, 1) // die;
      POSIX::dup2(fileno $err_w, 2) // die;
      if (fileno($answer_w) == 3) { fcntl($answer_w, F_SETFD, 0) // die }   # keep it across exec
      else { POSIX::dup2(fileno $answer_w, 3) // die }
    } else {
      POSIX::dup2(fileno $answer_w, 1) // die;
      POSIX::dup2(fileno $err_w, 2) // die;
    }
    if (defined $cwd) { $step = 'chdir'; chdir $cwd or die }
    if (defined $gid) { $step = 'setgid'; $) = "$gid $gid"; POSIX::setgid($gid) or die }
    if (defined $uid) { $step = 'setuid'; POSIX::setuid($uid) or die }
    $step = 'exec';
    no warnings 'exec';   # the failure is reported below, not printed
    exec { $argv[0] } @argv;
  };
  syswrite($status_w, failure($! + 0, $step));
  POSIX::_exit(127);
}

# Kill every child of this keeper until none is left. Each pid signalled is a child not yet
# reaped, so it is still the process it was; as each dies, its own children are re-parented
# here (the keeper is their subreaper) and are killed in the next round.
sub kill_tree {
  for (;;) {
    my @kids = children_of($$, 1);
    last unless @kids;
    kill 'KILL', @kids;
    waitpid($_, 0) for @kids;
  }
}

# Close every fd of the host's but stderr and the keeper's socket: another worker's socket or
# pipe held here would keep it from ever closing. One call (close_range, Linux 5.9+) per gap,
# whatever the number of fds the host holds; else each fd in /proc/self/fd.
#
# They are closed under Perl's feet: its handles for them still count those fd numbers as
# theirs, so a handle the keeper opens later on the same number would not be closed by Perl's
# `close` (the count says another handle still uses it: that is how a keeper once held its own
# exec status pipe open and waited forever), and one freed later could close a reused number.
# So a keeper never closes a Perl handle: it closes fds with `shut` (POSIX::close) and keeps
# the handle alive until it exits (POSIX::_exit runs no destructor), and reads /proc by raw fd.
my @SHUT;
sub shut { for (@_) { next unless $_; POSIX::close(fileno $_); push @SHUT, $_ } }

sub close_inherited {
  my ($keep) = @_;
  my $null = POSIX::open('/dev/null', O_RDWR);
  # fds 0 and 1 are the host's frames: the keeper must not hold them; /dev/null takes their
  # place, so that no pipe of the keeper's lands on them.
  if (defined $null) { POSIX::dup2($null, 0); POSIX::dup2($null, 1); }
  my @ranges = ([3, $keep - 1], [$keep + 1, 0xffffffff]);
  my $done = $SYS;
  for (@ranges) {
    my ($first, $last) = @$_;
    next if $last < $first;
    $done &&= syscall($SYS->{close_range}, $first, $last, 0) == 0;
  }
  return if $done;
  opendir(my $dh, '/proc/self/fd') or return;
  my @fds = grep { /^\d+$/ && $_ > 2 && $_ != $keep } readdir $dh;
  closedir $dh;
  POSIX::close($_) for @fds;
}

# Wait for the fds (pairs of fileno and poll events) or a wake-up signal, at most $ms (undef:
# no limit). Returns the revents of each fd, in order.
sub poll_fds {
  my ($ms, @want) = @_;
  if ($SYS) {
    my $fds = join '', map { pack 'i s s', $_->[0], $_->[1], 0 } @want;
    my $tmo = defined $ms ? pack('q q', int($ms / 1000), ($ms % 1000) * 1_000_000) : 0;
    my $n = syscall($SYS->{ppoll}, $fds, scalar(@want), $tmo, $WAIT_MASK, 8);
    return map { 0 } @want if $n <= 0;
    return map { (unpack 'i s s', substr($fds, $_ * 8, 8))[2] } 0 .. $#want;
  }
  # Unknown architecture: select, with the wake-up signals let in just before it (a signal in
  # between is seen at the latest after the bounded wait).
  my ($r, $w) = ('', '');
  for (@want) {
    vec($r, $_->[0], 1) = 1 if $_->[1] & $POLLIN;
    vec($w, $_->[0], 1) = 1 if $_->[1] & $POLLOUT;
  }
  $ms = 50 if !defined $ms || $ms > 50;
  POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $WAKE);
  my $n = select($r, $w, undef, $ms / 1000);
  POSIX::sigprocmask(POSIX::SIG_BLOCK(), $WAKE);
  return map { 0 } @want if $n <= 0;
  return map { (vec($r, $_->[0], 1) ? $POLLIN : 0) | (vec($w, $_->[0], 1) ? $POLLOUT : 0) } @want;
}

sub keeper {
  my ($id, $sock, $stdin) = @_;   # $stdin undef: it comes later, over the socket
  prctl($PR_SET_CHILD_SUBREAPER, 1);
  prctl($PR_SET_PDEATHSIG, POSIX::SIGUSR1());
  my $host_gone = getppid() != $HOST_PID;
  close_inherited(fileno $sock);
  my $tell = sub { write_all($sock, $_[0]) };   # fails once the host is gone: nothing to tell
  my $never = sub { my $f = failure($! + 0, $_[0]); $tell->('F ' . length($f) . "\n$f"); POSIX::_exit(0) };

  my $answer_w;
  if (defined $channel) {
    # A reused worker talks to the manager over a socket the manager listens on: the keeper
    # connects and says whose it is, and the worker gets it as its IPC channel (fd 3).
    socket($answer_w, AF_UNIX, SOCK_STREAM, 0) or $never->('socket');
    connect($answer_w, pack_sockaddr_un($channel)) or $never->('connect');
    write_all($answer_w, "$id\n") or $never->('connect');
  }
  my @pipes;
  for (1 .. 4) {
    pipe(my $r, my $w) or $never->('pipe');
    push @pipes, $r, $w;
  }
  # Perl opens these close-on-exec: the worker keeps only what exec_worker moves to 0-3.
  my ($status_r, $status_w, $in_r, $in_w, $out_r, $out_w, $err_r, $err_w) = @pipes;
  $answer_w //= $out_w;
  my $worker = fork;
  $never->('fork') unless defined $worker;
  exec_worker($in_r, $answer_w, $err_w, $status_w) if $worker == 0;
  # Read while the worker is surely not reaped (only this keeper reaps it, below): its start
  # time, and the keeper's own, go to the manager with its pid.
  my $started_as = "$worker " . start_of($worker) . ' ' . POSIX::getpid() . ' ' . start_of(POSIX::getpid());
  shut($status_w, $in_r, $out_w, $err_w, defined $channel ? $answer_w : ());
  if (defined $channel) { shut($out_r); undef $out_r }   # the worker's stdout goes to the host's stderr then
  nonblocking($_) for grep { defined } $in_w, $out_r, $err_r, $sock;

  my ($why, $started) = ('', 0);
  my ($ctl, $pending, $close_stdin) = ('', '', 0);
  my ($stdout, $out_bytes, $overflow, $tail, $memory) = ('', 0, 0, '', 0);
  my ($exited, $status, $flush_by);
  # The worker's stderr, forwarded (and its tail kept), less its progress lines, which go to
  # the host as G frames: the line splitting of ProgressLines in host-protocol.js. Only the
  # start of a line that may still become a progress line is held back.
  my ($held_line, $in_line) = ('', 0);
  my $forward = sub {
    my ($text) = @_;
    return unless length $text;
    write_all(\*STDERR, $text);   # the worker's own diagnostics, forwarded
    $tail = substr($tail . $text, -$STDERR_TAIL);
  };
  my $stderr_in = sub {
    my $buf = $held_line . $_[0];
    $held_line = '';
    while (length $buf) {
      if ($in_line) {
        my $nl = index $buf, "\n";
        if ($nl < 0) { $forward->($buf); last }
        $forward->(substr($buf, 0, $nl + 1, ''));
        $in_line = 0;
        next;
      }
      my $n = length($buf) < $PREFIX_LENGTH ? length($buf) : $PREFIX_LENGTH;
      if (substr($buf, 0, $n) ne substr($PROGRESS_PREFIX, 0, $n)) { $in_line = 1; next }
      my $nl = index $buf, "\n", $n;
      if ($nl < 0 && (length($buf) < $PREFIX_LENGTH || length($buf) - $PREFIX_LENGTH <= $MAX_PROGRESS)) { $held_line = $buf; last }
      if ($nl < 0 || $nl - $PREFIX_LENGTH > $MAX_PROGRESS) { $in_line = 1; next }   # too long: ordinary text
      my $value = substr($buf, $PREFIX_LENGTH, $nl - $PREFIX_LENGTH);
      substr($buf, 0, $nl + 1) = '';
      $tell->('G ' . length($value) . "\n$value") unless $host_gone;
    }
  };
  my $stderr_end = sub { $forward->($held_line); $held_line = ''; $in_line = 0 };
  my $next_memory = $memory_limit ? now_ms() + $MEMORY_POLL_MS : undef;
  my $request = sub {   # signal the worker's group; only while the worker is not reaped
    my ($signal) = @_;
    return if $exited;
    kill($signal, -$worker) || kill($signal, $worker);
  };
  if (defined $stdin) { $pending = $stdin; $close_stdin = 1 }
  my $close_in = sub { shut($in_w); undef $in_w; $pending = '' };
  my $flush_in = sub {
    while ($in_w && length $pending) {
      my $n = syswrite($in_w, $pending);
      if (defined $n) { substr($pending, 0, $n) = ''; next }
      last if $!{EAGAIN} || $!{EINTR};
      $close_in->();   # EPIPE: the command does not read its input; its exit says the rest
    }
    $close_in->() if $in_w && !length $pending && $close_stdin;
  };
  $request->('KILL') if $host_gone;
  for (;;) {
    $flush_in->();
    # Requests from the host: I <len>\n<stdin>, K <SIGNAL>\n (the group), L <SIGNAL>\n (the worker
    # alone).
    while ((my $nl = index $ctl, "\n") >= 0) {
      my ($kind, $arg) = split / /, substr($ctl, 0, $nl);
      if ($kind eq 'I') {
        last if length($ctl) < $nl + 1 + $arg;
        $pending .= substr($ctl, $nl + 1, $arg) if $in_w;
        $close_stdin = 1;
        substr($ctl, 0, $nl + 1 + $arg) = '';
        $flush_in->();
      } else {
        last unless $started || $exited;   # a signal waits for the exec (or for its failure)
        substr($ctl, 0, $nl + 1) = '';
        if ($kind eq 'L') { kill($arg, $worker) unless $exited }
        else { $request->($arg) }
      }
    }
    if (!$exited) {
      # Orphans that came here and died: reaped, so no zombie is left behind.
      waitpid($_, POSIX::WNOHANG()) for grep { $_ != $worker } children_of($$, 1);
      if (state_of($worker) =~ /^[ZX]?$/) {
        # The worker has exited and is not reaped yet: its group id cannot have been reused,
        # so the group is killed now, then the worker is reaped, then whatever is left of its
        # tree; the pipes it held close with it.
        kill 'KILL', -$worker;
        waitpid($worker, 0);
        $status = $?;
        $exited = 1;
        kill_tree();
        $flush_by = now_ms() + $FLUSH_LIMIT_MS;
        $close_in->();
      }
    }
    if ($memory_limit && !$exited && !$memory && now_ms() >= $next_memory) {
      $next_memory = now_ms() + $MEMORY_POLL_MS;
      my ($sum, @todo) = (0, children_of($$, 1));
      while (defined(my $pid = shift @todo)) {
        $sum += resident_bytes($pid);
        push @todo, children_of($pid);
      }
      if ($sum > $memory_limit) { $memory = 1; $request->('KILL') }
    }
    if ($exited && !$status_r && !$out_r && !$err_r || $exited && now_ms() >= $flush_by) {
      last if !$started;   # reported with F
      $stderr_end->();
      my $code = POSIX::WIFEXITED($status) ? POSIX::WEXITSTATUS($status) : '-';
      my $signal = POSIX::WIFSIGNALED($status) ? 'SIG' . $SIGNAME[POSIX::WTERMSIG($status)] : '-';
      $tell->("X $code $signal $overflow " . length($stdout) . ' ' . length($tail) . " $memory\n$stdout$tail") unless $host_gone;
      last;
    }
    my @want = grep { $_->[0] >= 0 } (
      [$host_gone ? -1 : fileno $sock, $POLLIN],
      [$status_r ? fileno $status_r : -1, $POLLIN],
      [$out_r ? fileno $out_r : -1, $POLLIN],
      [$err_r ? fileno $err_r : -1, $POLLIN],
      [$in_w && length $pending ? fileno $in_w : -1, $POLLOUT],
    );
    my $wait = $exited ? $flush_by - now_ms() : $memory_limit ? $next_memory - now_ms() : undef;
    $wait = 0 if defined $wait && $wait < 0;
    my @revents = poll_fds($wait, @want);
    $host_gone ||= getppid() != $HOST_PID;
    for my $i (0 .. $#want) {
      my $ev = $revents[$i] or next;
      my $fd = $want[$i][0];
      if (!$host_gone && $fd == fileno $sock) {
        my $n = sysread($sock, $ctl, 65536, length $ctl);
        if (defined $n && $n == 0 || !defined $n && !$!{EAGAIN} && !$!{EINTR}) { $host_gone = 1 }
      } elsif ($status_r && $fd == fileno $status_r) {
        my $n = sysread($status_r, $why, 4096, length $why);
        next if !defined $n && ($!{EAGAIN} || $!{EINTR});
        next if $n;
        # The exec is confirmed when the status pipe closes with nothing written.
        shut($status_r);
        undef $status_r;
        if (length $why) { $tell->('F ' . length($why) . "\n$why") }
        else { $started = 1; $tell->("P $started_as\n") }
      } elsif ($out_r && $fd == fileno $out_r) {
        my $n = sysread($out_r, my $chunk, 65536);
        next if !defined $n && ($!{EAGAIN} || $!{EINTR});
        if (!$n) { shut($out_r); undef $out_r; next }
        next if $overflow;
        $out_bytes += $n;
        if ($out_bytes > $MAX_OUTPUT) { $overflow = 1; $stdout = ''; $request->('KILL') }
        else { $stdout .= $chunk }
      } elsif ($err_r && $fd == fileno $err_r) {
        my $n = sysread($err_r, my $chunk, 65536);
        next if !defined $n && ($!{EAGAIN} || $!{EINTR});
        if (!$n) { shut($err_r); undef $err_r; $stderr_end->(); next }
        $stderr_in->($chunk);
      } elsif ($in_w && $fd == fileno $in_w) {
        $flush_in->();
        $close_in->() if $ev & ($POLLERR | $POLLHUP);
      }
    }
    $request->('KILL') if $host_gone;
  }
  POSIX::_exit(0);
}

# ---- The host ------------------------------------------------------------------------------

# The host's wait: epoll where the architecture is known (its cost follows the events, not the
# number of workers), else select over every socket.
my $EPOLL = $SYS ? syscall($SYS->{epoll_create1}, $EPOLL_CLOEXEC) : -1;
$EPOLL = -1 if $EPOLL < 0;
my $EVENT_SIZE = $SYS ? length(pack $SYS->{event}, 0, 0) : 0;
my $EVENTS = 256;
my $watched = '';   # select() fallback: the fds to read

sub watch {
  my ($fd, $on) = @_;
  if ($EPOLL >= 0) {
    my $event = pack $SYS->{event}, $EPOLLIN, $fd;
    syscall($SYS->{epoll_ctl}, $EPOLL, $on ? $EPOLL_CTL_ADD : $EPOLL_CTL_DEL, $fd, $event);
  } else {
    vec($watched, $fd, 1) = $on ? 1 : 0;
  }
}

# The fds ready to read, waiting at most $ms (undef: until one is, or a child exits).
sub host_wait {
  my ($ms) = @_;
  if ($EPOLL >= 0) {
    my $buf = "\0" x ($EVENT_SIZE * $EVENTS);
    my $n = syscall($SYS->{epoll_pwait}, $EPOLL, $buf, $EVENTS, defined $ms ? int($ms) : -1, $WAIT_MASK, 8);
    return () if $n <= 0;
    return map { (unpack $SYS->{event}, substr($buf, $_ * $EVENT_SIZE, $EVENT_SIZE))[1] } 0 .. $n - 1;
  }
  my $r = $watched;
  $ms = 200 if !defined $ms || $ms > 200;
  POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), $WAKE);
  my $n = select($r, undef, undef, $ms / 1000);
  POSIX::sigprocmask(POSIX::SIG_BLOCK(), $WAKE);
  return () if $n <= 0;
  return grep { vec($r, $_, 1) } 0 .. 8 * length($r) - 1;
}

# Start a queued worker: a socket to its keeper, and the keeper.
sub spawn_job {
  my ($id, $stdin) = @_;   # $stdin undef: kept open for an input frame
  socketpair(my $ours, my $theirs, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or return spawn_failed($id, failure($! + 0, 'socketpair'));
  my $pid = fork;
  return spawn_failed($id, failure($! + 0, 'fork')) unless defined $pid;
  if ($pid == 0) { close $ours; keeper($id, $theirs, $stdin) }
  close $theirs;
  my $job = { id => $id, keeper => $pid, sock => $ours, buf => '', out => '' };
  $jobs{$id} = $by_pid{$pid} = $by_fd{fileno $ours} = $job;
  watch(fileno $ours, 1);
}

sub start_queued {
  my $n = $SPAWN_BATCH;
  while ($n-- > 0 && @queue) {
    my $id = shift @queue;
    my $entry = delete $queued{$id} or next;
    spawn_job($id, $entry->[0]);
    tell_keeper($jobs{$id}, $entry->[1]) if $jobs{$id} && defined $entry->[1];   # signals asked for meanwhile
  }
}

# Tell a job's keeper (a request it reads on its socket); nothing once its socket is done.
sub tell_keeper {
  my ($job, $bytes) = @_;
  return unless $job->{sock} && !$job->{eof};
  $job->{out} .= $bytes;
  flush_keeper($job);
}

sub flush_keeper {
  my ($job) = @_;
  while (length $job->{out}) {
    my $n = syswrite($job->{sock}, $job->{out});
    if (defined $n) { substr($job->{out}, 0, $n) = ''; next }
    if ($!{EAGAIN} || $!{EINTR}) { wait_writable(fileno $job->{sock}); next }
    $job->{out} = '';   # the keeper is gone: its exit says the rest
  }
}

# What a keeper says: P <pid> (exec done), G <len>\n<json> (a progress line), F <len>\n<why>
# (never started), X <code> <signal> <overflow> <outlen> <errlen> <memory>\n<answer><tail> (the
# worker exited and its tree is gone): passed on to the manager with the job's id.
sub keeper_said {
  my ($job) = @_;
  for (;;) {
    my $nl = index $job->{buf}, "\n";
    return if $nl < 0;
    my ($kind, @fields) = split / /, substr($job->{buf}, 0, $nl);
    my $len = $kind eq 'F' || $kind eq 'G' ? $fields[0] : $kind eq 'X' ? $fields[3] + $fields[4] : 0;
    return if length($job->{buf}) < $nl + 1 + $len;
    my $payload = substr($job->{buf}, $nl + 1, $len);
    substr($job->{buf}, 0, $nl + 1 + $len) = '';
    if ($kind eq 'P') { $job->{pid} = $fields[0]; to_manager("P $job->{id} @fields\n") }
    elsif ($kind eq 'G') { to_manager("G $job->{id} $fields[0]\n$payload") }
    elsif ($kind eq 'F') { $job->{done} = 1; to_manager("F $job->{id} $fields[0]\n$payload") }
    elsif ($kind eq 'X') { $job->{done} = 1; to_manager("X $job->{id} @fields\n$payload") }
  }
}

sub read_keeper {
  my ($job) = @_;
  my $n = sysread($job->{sock}, $job->{buf}, 65536, length $job->{buf});
  return if !defined $n && ($!{EINTR} || $!{EAGAIN});
  if ($n) { keeper_said($job); return }
  # End of file: the keeper is gone, or going. Every report it wrote has been read.
  watch(fileno $job->{sock}, 0);
  delete $by_fd{fileno $job->{sock}};
  close $job->{sock};
  $job->{sock} = undef;
  $job->{eof} = 1;
  finish($job);
}

# A job ends when its keeper has been reaped and its socket read to the end (in either order):
# then everything the keeper said has been passed on.
sub finish {
  my ($job) = @_;
  return unless $job->{eof} && defined $job->{status};
  delete $jobs{$job->{id}};
  return if $job->{done};
  if (!defined $job->{pid}) {
    # The keeper died (killed from outside) before it could say either way.
    return spawn_failed($job->{id}, join "\0", 'ECHILD', 'spawn', 'the keeper of the worker died');
  }
  # The keeper was killed while the worker ran: its tree came here and is killed (sweep).
  my $st = $job->{status};
  my $code = POSIX::WIFEXITED($st) ? POSIX::WEXITSTATUS($st) : '-';
  my $signal = POSIX::WIFSIGNALED($st) ? 'SIG' . $SIGNAME[POSIX::WTERMSIG($st)] : '-';
  to_manager("X $job->{id} $code $signal 0 0 0 0\n");
}

# A child of the host that is no keeper came from the tree of a keeper that died (killed from
# outside): its attempt has ended, so it is killed. It is a child not reaped yet, so its pid is
# still its own; reap() collects it, and what it leaves comes here in turn.
sub sweep_strays {
  my @strays = grep { !$by_pid{$_} } children_of($$, 1);
  kill 'KILL', @strays if @strays;
  $sweep_until = now_ms() + 2000 if @strays;
}

# Collect the keepers' exit statuses (and the strays').
sub reap {
  my $stray = 0;
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    my $job = delete $by_pid{$pid};
    if (!$job) { $stray = 1; next }
    $job->{status} = $?;
    # A keeper that left without its report was killed: its worker's tree comes here.
    $sweep_until = now_ms() + 2000 if $? != 0;
    finish($job);
  }
  sweep_strays() if $stray || $sweep_until > now_ms();
}

# The manager is gone (or done with us): no worker outlives it. Each keeper kills its
# worker's tree and leaves (its socket closes); the host waits for them (a moment, unless a
# process is stuck in the kernel), so that none is left to whoever reaps the host.
sub shutdown_host {
  @queue = ();
  %queued = ();
  for my $job (values %jobs) {
    close $job->{sock} if $job->{sock};
    $job->{sock} = undef;
    kill 'USR1', $job->{keeper} if !defined $job->{status};
  }
  local $SIG{ALRM} = sub { POSIX::_exit(0) };
  alarm 3;
  for (;;) {
    sweep_strays();
    my $pid = waitpid(-1, 0);
    last if $pid <= 0;
    delete $by_pid{$pid};
  }
  POSIX::_exit(0);
}

sub configure {
  my ($payload) = @_;
  my @fields = split /\0/, $payload, -1;
  my $argc = shift @fields;
  @argv = splice @fields, 0, $argc;
  my $envc = shift @fields;
  # The host's own environment becomes the workers': children inherit it as it is.
  %ENV = map { split /=/, $_, 2 } splice @fields, 0, $envc;
  ($cwd, $uid, $gid, $answer_fd, $memory_limit, $channel) = map { defined && length ? $_ : undef } @fields;
  $answer_fd //= 1;
}

# Frames from the manager: C (configure), S (spawn), I (input), K (signal). See host-protocol.js.
# A spawn is queued; a signal for a worker still in the queue goes to its keeper once it is
# started (the keeper applies it once the worker's exec is done).
sub read_manager {
  my $n = sysread(\*STDIN, $from_manager, 65536, length $from_manager);
  return if !defined $n && ($!{EINTR} || $!{EAGAIN});
  shutdown_host() unless $n;
  while ((my $nl = index $from_manager, "\n") >= 0) {
    my @head = split / /, substr($from_manager, 0, $nl);
    my $kind = $head[0];
    my $len = $kind eq 'C' ? $head[1] : $kind eq 'S' || $kind eq 'I' ? $head[2] : 0;
    $len = 0 if $len eq '-';
    last if length($from_manager) < $nl + 1 + $len;
    my $payload = substr($from_manager, $nl + 1, $len);
    substr($from_manager, 0, $nl + 1 + $len) = '';
    my $id = $head[1];
    if ($kind eq 'C') { configure($payload) }
    elsif ($kind eq 'S') { push @queue, $id; $queued{$id} = [$head[2] eq '-' ? undef : $payload] }
    elsif ($kind eq 'I') {
      if ($queued{$id}) { $queued{$id}[0] = $payload }
      elsif ($jobs{$id}) { tell_keeper($jobs{$id}, 'I ' . length($payload) . "\n$payload") }
    } elsif ($kind eq 'K') {
      # K <id> <SIGNAL> [leader]: the worker's group, or with `leader` the worker alone.
      my $request = (defined $head[3] && $head[3] eq 'leader' ? 'L ' : 'K ') . ($head[2] =~ s/^SIG//r) . "\n";
      if ($queued{$id}) { $queued{$id}[1] .= $request }
      elsif ($jobs{$id}) { tell_keeper($jobs{$id}, $request) }
    }
  }
}

nonblocking(\*STDIN);
watch(0, 1);
to_manager("R $$ $CONTAINMENT\n");
for (;;) {
  my $wait = @queue ? 0 : $sweep_until > now_ms() ? 100 : undef;
  for my $fd (host_wait($wait)) {
    if ($fd == 0) { read_manager(); next }
    my $job = $by_fd{$fd} or next;
    read_keeper($job);
  }
  reap();
  start_queued();
}
