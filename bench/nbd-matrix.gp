# nbd-matrix.gp: the bar chart of bench/nbd-matrix.sh.
#
# Three panels, one cluster of bars per workload row: throughput as a ratio
# to raw fio (the physical limit), throughput as a ratio to the nbdkit null
# ceiling (the protocol limit), and p99 latency on a log scale.  Ratios, not
# absolute IOPS, because the VM's neighbours move absolute figures a lot.
# Called as: gnuplot -e "dir='DATADIR'; out='FILE.png'; ttl='TITLE'" nbd-matrix.gp
# where DATADIR holds xraw.dat, xnull.dat, p99.dat and vars.gp from
# `report.py dat`.
load dir.'/vars.gp'
set terminal pngcairo size 1400,1500 font ",10"
set output out
set multiplot layout 3,1 title ttl font ",13"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside right top vertical
set xtics rotate by -25 nomirror
set xrange [-0.6:n_rows-0.4]
set datafile separator "\t"
set datafile missing "NaN"

set title "IOPS (= MiB/s) as a ratio to raw fio on the same file (higher is better)"
set ylabel "x raw"
set yrange [0:1.05<*]
plot for [i=2:n_xraw+1] dir.'/xraw.dat' using i:xtic(1) title columnheader(i) lc rgb word(c_xraw, i-1), \
     1 with lines dt 2 lc rgb "black" notitle

set title "IOPS as a ratio to the nbdkit null ceiling (dashed: 1.0 and the 0.9 goal)"
set ylabel "x null"
plot for [i=2:n_xnull+1] dir.'/xnull.dat' using i:xtic(1) title columnheader(i) lc rgb word(c_xnull, i-1), \
     1 with lines dt 2 lc rgb "black" notitle, \
     0.9 with lines dt 3 lc rgb "red" notitle

set title "p99 latency, submission to completion (lower is better)"
set ylabel "microseconds"
set logscale y
set format y "%.0f"
set yrange [*:*]
plot for [i=2:n_p99+1] dir.'/p99.dat' using i:xtic(1) title columnheader(i) lc rgb word(c_p99, i-1)
unset multiplot
