select
  region,
  count(*) filter (where status = 'won') as won,
  count(*) filter (where status = 'lost') as lost,
  round(avg(amount)::numeric, 2) as avg_amount
from deals
group by region
having count(*) > 10
